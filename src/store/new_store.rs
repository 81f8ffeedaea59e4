//! Whether a job store may be made new. A store that is missing, zero bytes or holds no tables
//! would be made new at start; where `results/` or `uploads/` still hold segment files, those
//! are the collected results and waiting uploads of jobs a lost store knew, and the start-up
//! scrub and upload cleanup would delete every one of them as "no job refers to it". Such a
//! start is refused before anything is written. A zero-byte file is refused anyway, as
//! `check --state-dir` refuses it: nothing but a damaged or truncated store leaves one.

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
/// zero-byte file, and a missing one while the directory holds segments.
pub fn check_before_open(state_dir: &Path, db: &Path) -> Result<(), Refusal> {
    let why = match std::fs::metadata(db) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => "is missing",
        Err(_) => return Ok(()),
        Ok(m) if m.len() == 0 => "is an empty file (zero bytes)",
        Ok(_) => return Ok(()),
    };
    let segments = Segments::of(state_dir);
    if segments.any() {
        return Err(Refusal::Orphaned(db.to_path_buf(), why, segments));
    }
    if why.starts_with("is an empty") {
        return Err(Refusal::Empty(db.to_path_buf()));
    }
    Ok(())
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
