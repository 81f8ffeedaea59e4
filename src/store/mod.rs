//! What lives in `--state-dir`: the job store (SQLite), the spool of waiting uploads and the
//! append-only segment files that hold uploads and collected results. May import `base` only.

pub mod controls;
pub mod dir_access;
pub mod dir_lock;
pub mod disk_reserve;
pub mod file_access;
pub mod file_identity;
pub mod handoff;
pub mod jobs_db;
pub mod new_store;
pub mod removals;
pub mod results_hashes;
pub mod scrub;
pub mod segment_names;
pub mod segments;
pub mod settle_clock;
pub mod snapshot;
pub mod spool;
pub mod stall_watch;
pub mod state_check;
pub mod wait_clock;
pub mod wal_sync;
pub mod wall_look;
